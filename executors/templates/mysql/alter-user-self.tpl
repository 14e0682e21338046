-- kind: change
-- MySQL 8 self-change (PASSWORD() is gone there; any account may ALTER USER itself).
-- On MariaDB this needs the CREATE USER privilege: use mysql/set-password-self there.
-- With PASSWORD REQUIRE CURRENT, add: REPLACE {{ current_password }} before the ';'.
ALTER USER CURRENT_USER() IDENTIFIED BY {{ new_password }};
