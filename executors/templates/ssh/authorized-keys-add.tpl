# kind: key-install
# The account logs in with its current key and adds the new public key to its own
# authorized_keys (executors/ssh/authorized_keys.py: by exact key, atomically, under a lock;
# every other line is kept as it is). Adding a key already present changes nothing.
exec: sh -c {{ values.authorized_keys_edit }} keyturn add {{ values.authorized_keys_file }} {{ values.public_key }}
fail: keyturn-keys:
expect: keyturn-keys-ok
exit: 0
