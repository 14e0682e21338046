# kind: key-remove
# The account logs in with its new key and removes the old public key from its own
# authorized_keys: only lines holding that key, whatever their options; the rest is kept.
exec: sh -c {{ values.authorized_keys_edit }} keyturn remove {{ values.authorized_keys_file }} {{ values.public_key }}
fail: keyturn-keys:
expect: keyturn-keys-ok
exit: 0
