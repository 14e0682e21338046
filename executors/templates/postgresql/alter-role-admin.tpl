-- kind: change
-- PostgreSQL change through a privileged account: the auth credential (a superuser, or a role
-- with CREATEROLE, plus ADMIN OPTION on the role from PostgreSQL 16) sets the role's password.
-- The password is sent as its SCRAM-SHA-256 verifier, computed by Keyturn: the server never sees
-- it, and a server logging DDL (log_statement = 'ddl' or 'all') logs only the verifier.
ALTER ROLE {{ username | sql_ident }} WITH PASSWORD {{ new_password | scram_sha_256 }};
