-- kind: activate
-- Unlock the account, through a privileged account (CREATE USER privilege).
ALTER USER {{ username }}@{{ values.host | default('%') }} ACCOUNT UNLOCK;
