# kind: deactivate
# Lock a Linux account through a privileged account that may run usermod with sudo (as
# ssh/linux-chpasswd does for chpasswd). -L locks the password and -e 1 expires the account:
# locking the password alone would leave key logins open, while an expired account is refused
# every login (sshd asks PAM's account check, which refuses it whatever the authentication).
# The first sudo (-v) only checks the password, so a wrong one is refused before anything runs.
exec: sudo -k -S -p 'keyturn-sudo-password:' -v && echo keyturn-sudo-ok && sudo -k -S -p 'keyturn-sudo-password:' usermod -L -e 1 {{ username }} && echo keyturn-done
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
