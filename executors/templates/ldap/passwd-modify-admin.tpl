# kind: change
# Change through a privileged account: the auth account binds, then resets the credential's
# password with the Password Modify extended operation (RFC 3062) on its DN, without the old one.
passwd_modify: {{ user_dn }}
  new: {{ new_password }}
