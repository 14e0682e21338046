# kind: task
# The entries below the device's base_dn that OpenLDAP's ppolicy overlay has locked
# (pwdAccountLockedTime set), one DN per line; none is an answer too. Needs an account that may
# read pwdAccountLockedTime (the rootdn, or one with access to it).
search: {{ base_dn }}
  filter: (pwdAccountLockedTime=*)
  scope: sub
