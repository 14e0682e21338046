"""LDAP directories (OpenLDAP, Active Directory): the executor and its script language."""

from executors.ldap.executor import LdapExecutor

__all__ = ["LdapExecutor"]
