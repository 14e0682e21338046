# kind: verify
# Log in with the secret under test and confirm the session belongs to the expected account.
# $env:USERNAME has no domain part: compare with the name stripped of DOMAIN\ and @domain.
$expected = {{ username }} -replace '^.*\\', '' -replace '@.*$', ''
if ($env:USERNAME -ne $expected) { throw "logged in as $env:USERNAME, expected $expected" }
Write-Output $env:USERNAME
