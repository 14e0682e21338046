# kind: jit-create
# A just-in-time Linux account, through a privileged account that may run useradd and chpasswd
# with sudo: useradd makes the account with a home directory (-m) and a login shell, then
# chpasswd reads "user:password" on its input, so the new password is on no command line.
exec: sudo -k -S -p 'keyturn-sudo-password:' -v && echo keyturn-sudo-ok && sudo -k -S -p 'keyturn-sudo-password:' useradd -m -s /bin/bash {{ username }} && sudo -k -S -p 'keyturn-sudo-password:' chpasswd
authfail: (?i)sorry, try again|incorrect password attempt
fail: (?i)is not in the sudoers|may not run sudo|not allowed to
expect: keyturn-sudo-password:
send: {{ auth_password }}
expect: keyturn-sudo-ok
expect: keyturn-sudo-password:
send: {{ auth_password }}
fail: (?i)useradd:
expect: keyturn-sudo-password:
send: {{ auth_password }}
send: {{ username }}:{{ new_password }}
eof:
fail: (?i)chpasswd:
exit: 0
