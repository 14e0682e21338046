-- kind: jit-create
-- A just-in-time role, through a privileged account: it logs in with the new password (sent as
-- its SCRAM-SHA-256 verifier, computed by Keyturn) until values.valid_until, the end of its time
-- to live, even if the removal that follows were ever late.
CREATE ROLE {{ username | sql_ident }} LOGIN PASSWORD {{ new_password | scram_sha_256 }} VALID UNTIL {{ values.valid_until }};
