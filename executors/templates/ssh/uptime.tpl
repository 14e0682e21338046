# kind: task
# How long the host has been up, how many users are logged in, and its load.
exec: uptime
