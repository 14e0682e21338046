-- kind: activate
-- Let the role log in again (LOGIN), through a privileged account.
ALTER ROLE {{ username | sql_ident }} LOGIN;
