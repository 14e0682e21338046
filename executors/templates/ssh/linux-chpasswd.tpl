# kind: change
# Linux change through a privileged account that may run chpasswd with sudo. Every sudo has -k:
# it asks for the password and neither reads nor writes sudo's credential cache, so sessions of
# one admin account running side by side (or a person using it) never disturb each other's
# tickets (an earlier version ran sudo -K, which erases the tickets of every session).
# The first sudo (-v) only checks the password: a wrong one is refused before the new password
# is sent (sudo -S would read the next line as a second try). The second reads the password,
# then chpasswd reads "user:password" until end of input: no secret is on a command line.
exec: sudo -k -S -p 'keyturn-sudo-password:' -v && echo keyturn-sudo-ok && sudo -k -S -p 'keyturn-sudo-password:' chpasswd
authfail: (?i)sorry, try again|incorrect password attempt
fail: (?i)is not in the sudoers|may not run sudo|not allowed to
expect: keyturn-sudo-password:
send: {{ auth_password }}
expect: keyturn-sudo-ok
expect: keyturn-sudo-password:
send: {{ auth_password }}
send: {{ username }}:{{ new_password }}
eof:
fail: (?i)chpasswd:
exit: 0
