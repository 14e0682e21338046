-- kind: change
-- MySQL/MariaDB change through a privileged account (CREATE USER privilege). An account is
-- 'user'@'host': the host part comes from values.host, which the executor fills from the device
-- option account_host (default '%').
ALTER USER {{ username }}@{{ values.host | default('%') }} IDENTIFIED BY {{ new_password }};
