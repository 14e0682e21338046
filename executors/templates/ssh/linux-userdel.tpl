# kind: jit-remove
# Remove a just-in-time Linux account and its home directory, through a privileged account that
# may run userdel with sudo. -f removes it even while a session of it is still open: the account's
# time is up. (userdel warns about a missing mail spool on stderr; only its exit status counts.)
exec: sudo -k -S -p 'keyturn-sudo-password:' -v && echo keyturn-sudo-ok && sudo -k -S -p 'keyturn-sudo-password:' userdel -f -r {{ username }}
authfail: (?i)sorry, try again|incorrect password attempt
fail: (?i)is not in the sudoers|may not run sudo|not allowed to
expect: keyturn-sudo-password:
send: {{ auth_password }}
expect: keyturn-sudo-ok
expect: keyturn-sudo-password:
send: {{ auth_password }}
exit: 0
