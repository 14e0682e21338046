# kind: change
# Local account self-change: the credential logs in with its current password (it must be allowed
# to use WinRM: Remote Management Users) and changes its own password through the WinNT ADSI
# provider, which checks the old password the way Ctrl+Alt+Del does; no administrator needed.
$account = [ADSI]('WinNT://' + $env:COMPUTERNAME + '/' + {{ username }} + ',user')
$account.ChangePassword({{ current_password }}, {{ new_password }})
Write-Output 'password changed'
