# kind: activate
# OpenLDAP with the ppolicy overlay: unlock the entry by removing pwdAccountLockedTime, through a
# privileged account. An entry that is not locked has no such attribute and the directory says
# noSuchAttribute; Keyturn then logs in to see whether the account works, and if it does, that is
# what was asked for.
modify: {{ user_dn }}
  delete pwdAccountLockedTime:
