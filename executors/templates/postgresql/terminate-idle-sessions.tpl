-- kind: task
-- param: idle_minutes int 60
-- Terminate the sessions of the device's database that have been idle for longer than
-- idle_minutes (never the task's own), as an account that may see and signal them: a
-- superuser, or a member of pg_read_all_stats (to see other roles' sessions' state) and of
-- pg_signal_backend (to end sessions of roles that are not superusers). The sessions are chosen
-- first (MATERIALIZED), so no other session is ever signalled. The output is how many were
-- terminated.
WITH idle AS MATERIALIZED (
  SELECT pid FROM pg_stat_activity
  WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'
  AND state_change < now() - make_interval(mins => {{ params.idle_minutes }})
)
SELECT count(*) FROM idle WHERE pg_terminate_backend(pid);
