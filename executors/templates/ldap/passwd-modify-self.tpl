# kind: change
# Self change: the credential binds with its current password, then asks the directory to change
# it with the Password Modify extended operation (RFC 3062, OpenLDAP and most directories). The
# old password is sent too, so the server can check it against its policy; it hashes the new one.
passwd_modify:
  old: {{ current_password }}
  new: {{ new_password }}
