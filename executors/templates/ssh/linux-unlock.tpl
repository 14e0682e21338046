# kind: activate
# Unlock a Linux account locked by ssh/linux-lock: -U unlocks the password and -e '' clears the
# account's expiry date, so password and key logins work again. Through a privileged account
# that may run usermod with sudo.
exec: sudo -k -S -p 'keyturn-sudo-password:' -v && echo keyturn-sudo-ok && sudo -k -S -p 'keyturn-sudo-password:' usermod -U -e '' {{ username }} && echo keyturn-done
authfail: (?i)sorry, try again|incorrect password attempt
fail: (?i)is not in the sudoers|may not run sudo|not allowed to
expect: keyturn-sudo-password:
send: {{ auth_password }}
expect: keyturn-sudo-ok
expect: keyturn-sudo-password:
send: {{ auth_password }}
fail: (?i)usermod:
expect: keyturn-done
exit: 0
