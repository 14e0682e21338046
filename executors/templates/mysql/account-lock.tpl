-- kind: deactivate
-- Lock the account (MySQL 5.7+, MariaDB 10.4+), through a privileged account (CREATE USER
-- privilege): its logins are refused, its password and grants stay. The host part comes from
-- values.host (the device option account_host, default '%').
ALTER USER {{ username }}@{{ values.host | default('%') }} ACCOUNT LOCK;
