# kind: change
# Local account reset through a privileged account (the credential's auth credential, a local
# administrator). Set-LocalUser needs Windows PowerShell 5.1 (Windows 10 / Server 2016 or newer).
Set-LocalUser -Name {{ username }} -Password (ConvertTo-SecureString {{ new_password }} -AsPlainText -Force)
Write-Output 'password set'
