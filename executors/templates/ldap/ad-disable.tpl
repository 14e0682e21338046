# kind: deactivate
# Active Directory: disable the account through a privileged account by setting
# userAccountControl to 514 (NORMAL_ACCOUNT 512 + ACCOUNTDISABLE 2). It replaces the whole value:
# an account with other flags (DONT_EXPIRE_PASSWORD, say) needs a copy with its own value.
# Set user_dn_template (or use full DNs as usernames), e.g. "CN={username},CN=Users,{base_dn}".
modify: {{ user_dn }}
  replace userAccountControl: 514
