# kind: key-remove
# Through a privileged account (see authorized-keys-add-sudo): removes the old public key from
# the target account's authorized_keys, leaving every other line as it is.
exec: sudo -k -S -p 'keyturn-sudo-password:' -u {{ username }} sh -c {{ values.authorized_keys_edit }} keyturn remove {{ values.authorized_keys_file }} {{ values.public_key }}
authfail: (?i)sorry, try again|incorrect password attempt
fail: (?i)is not in the sudoers|may not run sudo|not allowed to|keyturn-keys:
expect: keyturn-sudo-password:
send: {{ auth_password }}
expect: keyturn-keys-ok
exit: 0
