# kind: task
# Who is logged in on the host now (login name, terminal, since when, from where).
exec: who
