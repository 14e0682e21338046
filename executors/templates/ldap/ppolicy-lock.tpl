# kind: deactivate
# OpenLDAP with the ppolicy overlay: lock the entry through a privileged account (the rootdn, or
# one with manage access to pwdAccountLockedTime). 000001010000Z locks it until an administrator
# unlocks it; every bind is then refused with invalidCredentials. The entry's password policy
# must have pwdLockout: TRUE, or slapd ignores the attribute.
modify: {{ user_dn }}
  replace pwdAccountLockedTime: 000001010000Z
