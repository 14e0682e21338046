# kind: task
# param: service string
# Restart a systemd service through sudo: the account must be allowed to run systemctl with
# sudo. sudo -k asks for the account's password (read from the vault) and leaves no ticket
# behind; "--" keeps a service name from being read as an option.
exec: sudo -k -S -p 'keyturn-sudo-password:' systemctl restart -- {{ params.service }}
authfail: (?i)sorry, try again|incorrect password attempt
fail: (?i)is not in the sudoers|may not run sudo|not allowed to
expect: keyturn-sudo-password:
send: {{ current_password }}
