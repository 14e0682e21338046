-- kind: deactivate
-- Refuse the role's logins (NOLOGIN), through a privileged account (a superuser, or CREATEROLE
-- with ADMIN OPTION on the role from PostgreSQL 16). Its password and grants stay as they are.
ALTER ROLE {{ username | sql_ident }} NOLOGIN;
