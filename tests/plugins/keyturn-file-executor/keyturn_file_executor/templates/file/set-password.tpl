# kind: change
set-password: {{ new_password }}
