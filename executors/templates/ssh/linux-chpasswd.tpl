# kind: change
# Linux change through a privileged account: the auth account logs in and proves itself to sudo
# once (-K forgets any cached ticket, -v makes a fresh one); chpasswd then reads
# "user:password" on stdin, so no secret is ever on a command line.
exec: sudo -K; sudo -S -p 'keyturn-sudo-password:' -v && echo keyturn-sudo-ok && sudo -n chpasswd
expect: keyturn-sudo-password:
send: {{ auth_password }}
authfail: (?i)sorry, try again|incorrect password attempt
fail: (?i)is not in the sudoers|not allowed to|a password is required
expect: keyturn-sudo-ok
send: {{ username }}:{{ new_password }}
eof:
fail: (?i)chpasswd:
exit: 0
