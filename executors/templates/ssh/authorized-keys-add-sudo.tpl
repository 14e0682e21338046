# kind: key-install
# Through a privileged account that may run sh as the target account with sudo (sudoers:
# "admin ALL=(%keyusers) /bin/sh"): adds the new public key to that account's authorized_keys.
# sudo -k asks for the password and keeps no ticket; a wrong one is refused before anything runs.
exec: sudo -k -S -p 'keyturn-sudo-password:' -u {{ username }} sh -c {{ values.authorized_keys_edit }} keyturn add {{ values.authorized_keys_file }} {{ values.public_key }}
authfail: (?i)sorry, try again|incorrect password attempt
fail: (?i)is not in the sudoers|may not run sudo|not allowed to|keyturn-keys:
expect: keyturn-sudo-password:
send: {{ auth_password }}
expect: keyturn-keys-ok
exit: 0
