-- kind: change
-- PostgreSQL change through a privileged account: the auth credential (a superuser, or a role
-- with CREATEROLE, plus ADMIN OPTION on the role from PostgreSQL 16) sets the role's password.
-- Note: a server logging DDL (log_statement = 'ddl' or 'all') writes this statement, password
-- included, to its log: keep statement logging off on servers whose passwords Keyturn manages.
ALTER ROLE {{ username | sql_ident }} WITH PASSWORD {{ new_password }};
