# kind: change
# Active Directory reset through a privileged account: replace unicodePwd with the new password
# in double quotes, UTF-16-LE encoded ("as unicodepwd"). AD accepts this only over LDAPS or
# StartTLS: set the device's use_ssl or start_tls option. Set user_dn_template (or use full DNs
# as usernames) to match the directory, e.g. "CN={username},CN=Users,{base_dn}".
# A self change would instead delete the old value and add the new one:
#   modify: {{ user_dn }}
#     delete unicodePwd as unicodepwd: {{ current_password }}
#     add unicodePwd as unicodepwd: {{ new_password }}
modify: {{ user_dn }}
  replace unicodePwd as unicodepwd: {{ new_password }}
