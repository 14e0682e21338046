# kind: change
# Active Directory account reset through a privileged account allowed to reset its password
# (Domain Admins or a delegated "Reset password" right), on a host with the ActiveDirectory module.
Set-ADAccountPassword -Identity {{ username }} -Reset -NewPassword (ConvertTo-SecureString {{ new_password }} -AsPlainText -Force)
Write-Output 'password set'
