# kind: activate
# Active Directory: enable the account through a privileged account by setting
# userAccountControl back to 512 (NORMAL_ACCOUNT). It replaces the whole value: an account with
# other flags needs a copy with its own value.
modify: {{ user_dn }}
  replace userAccountControl: 512
