-- kind: change
-- PostgreSQL self-change: the role logs in with its current password and sets a new one
-- (any role may change its own password).
-- The password is sent as its SCRAM-SHA-256 verifier, computed by Keyturn: the server never sees
-- it, and a server logging DDL (log_statement = 'ddl' or 'all') logs only the verifier.
ALTER ROLE {{ username | sql_ident }} WITH PASSWORD {{ new_password | scram_sha_256 }};
