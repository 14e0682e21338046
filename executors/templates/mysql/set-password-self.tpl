-- kind: change
-- MySQL/MariaDB self-change: the account logs in with its current password and sets a new one.
-- SET PASSWORD for oneself needs no privilege on MariaDB (10.11: ALTER USER CURRENT_USER() needs
-- CREATE USER) and on MySQL 5.7. MySQL 8 removed PASSWORD(): use mysql/alter-user-self there.
SET PASSWORD = PASSWORD({{ new_password }});
