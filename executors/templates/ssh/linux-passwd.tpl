# kind: change
# Linux self-change: the credential logs in with its current password and runs passwd.
# passwd re-prompts "New password:" when it rejects one; the fail line catches that instead of hanging.
spawn: passwd
expect: (?i)current password:|\(current\) unix password:
send: {{ current_password }}
fail: (?i)authentication token manipulation error|password unchanged
expect: (?i)new password:
send: {{ new_password }}
expect: (?i)retype new password:|re-enter new password:
send: {{ new_password }}
fail: (?i)bad password|password unchanged|has not been changed|choose a longer|do not match|new password:|manipulation error
expect: (?i)password updated successfully|all authentication tokens updated successfully
exit: 0
