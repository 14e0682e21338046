-- kind: change
-- PostgreSQL self-change: the role logs in with its current password and sets a new one
-- (any role may change its own password). The server hashes it per password_encryption.
-- Note: a server logging DDL (log_statement = 'ddl' or 'all') writes this statement, password
-- included, to its log: keep statement logging off on servers whose passwords Keyturn manages.
ALTER ROLE {{ username | sql_ident }} WITH PASSWORD {{ new_password }};
