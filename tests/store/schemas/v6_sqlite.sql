CREATE TABLE device (
	id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	address VARCHAR NOT NULL, 
	port INTEGER NOT NULL, 
	executor VARCHAR NOT NULL, 
	zone VARCHAR NOT NULL, 
	profile VARCHAR NOT NULL, 
	host_keys JSON NOT NULL, 
	trust_on_first_use BOOLEAN NOT NULL, 
	options JSON NOT NULL, 
	allow_insecure_transport BOOLEAN NOT NULL, 
	max_concurrent_operations INTEGER, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX ix_device_name ON device (name);

CREATE TABLE policy (
	id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	length INTEGER NOT NULL, 
	lowercase BOOLEAN NOT NULL, 
	uppercase BOOLEAN NOT NULL, 
	digits BOOLEAN NOT NULL, 
	symbols BOOLEAN NOT NULL, 
	exclude VARCHAR NOT NULL, 
	max_attempts INTEGER NOT NULL, 
	retry_interval_seconds FLOAT NOT NULL, 
	backoff FLOAT NOT NULL, 
	connect_timeout_seconds FLOAT NOT NULL, 
	read_timeout_seconds FLOAT NOT NULL, 
	lockout_budget INTEGER NOT NULL, 
	lockout_window_seconds FLOAT NOT NULL, 
	max_concurrent_operations INTEGER NOT NULL, 
	change_every_seconds INTEGER, 
	verify_every_seconds INTEGER, 
	change_window JSON, 
	jitter_seconds INTEGER NOT NULL, 
	change_after_view_seconds INTEGER, 
	change_after_session_seconds INTEGER, 
	max_session_wait_seconds INTEGER, 
	paused BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX ix_policy_name ON policy (name);

CREATE TABLE template (
	id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	version INTEGER NOT NULL, 
	executor VARCHAR NOT NULL, 
	kind VARCHAR NOT NULL, 
	body TEXT NOT NULL, 
	shipped BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name, version)
);

CREATE INDEX ix_template_name ON template (name);

CREATE TABLE auditevent (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	event VARCHAR NOT NULL, 
	principal VARCHAR NOT NULL, 
	outcome VARCHAR NOT NULL, 
	operation_id VARCHAR, 
	credential_id VARCHAR, 
	device_id VARCHAR, 
	detail JSON NOT NULL, 
	prev_hash VARCHAR NOT NULL, 
	hash VARCHAR NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_auditevent_at ON auditevent (at);

CREATE INDEX ix_auditevent_credential_id ON auditevent (credential_id);

CREATE INDEX ix_auditevent_operation_id ON auditevent (operation_id);

CREATE INDEX ix_auditevent_event ON auditevent (event);

CREATE TABLE audithead (
	id INTEGER NOT NULL, 
	last_id INTEGER NOT NULL, 
	hash VARCHAR NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE siemcursor (
	destination VARCHAR NOT NULL, 
	last_id INTEGER NOT NULL, 
	lease_owner VARCHAR, 
	lease_until DATETIME, 
	PRIMARY KEY (destination)
);

CREATE TABLE logincharge (
	id VARCHAR NOT NULL, 
	device_id VARCHAR NOT NULL, 
	username VARCHAR NOT NULL, 
	state VARCHAR NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_logincharge_username ON logincharge (username);

CREATE INDEX ix_logincharge_device_id ON logincharge (device_id);

CREATE INDEX ix_logincharge_at ON logincharge (at);

CREATE TABLE accountlock (
	device_id VARCHAR NOT NULL, 
	username VARCHAR NOT NULL, 
	touched INTEGER NOT NULL, 
	PRIMARY KEY (device_id, username)
);

CREATE TABLE credentialgate (
	credential_id VARCHAR NOT NULL, 
	seq INTEGER NOT NULL, 
	PRIMARY KEY (credential_id)
);

CREATE TABLE schemaversion (
	id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE deviceslot (
	device_id VARCHAR NOT NULL, 
	slot INTEGER NOT NULL, 
	operation_id VARCHAR NOT NULL, 
	acquired_at DATETIME NOT NULL, 
	PRIMARY KEY (device_id, slot)
);

CREATE INDEX ix_deviceslot_operation_id ON deviceslot (operation_id);

CREATE TABLE credential (
	id VARCHAR NOT NULL, 
	device_id VARCHAR NOT NULL, 
	username VARCHAR NOT NULL, 
	profile VARCHAR NOT NULL, 
	change_template VARCHAR NOT NULL, 
	verify_template VARCHAR NOT NULL, 
	auth_credential_id VARCHAR, 
	policy_id VARCHAR, 
	parent_id VARCHAR, 
	reconcile_credential_id VARCHAR, 
	auto_reconcile BOOLEAN NOT NULL, 
	sync_state VARCHAR(11) NOT NULL, 
	needs_verify BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	secret_changed_at DATETIME NOT NULL, 
	verified_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(device_id) REFERENCES device (id), 
	FOREIGN KEY(auth_credential_id) REFERENCES credential (id), 
	FOREIGN KEY(policy_id) REFERENCES policy (id), 
	FOREIGN KEY(parent_id) REFERENCES credential (id), 
	FOREIGN KEY(reconcile_credential_id) REFERENCES credential (id)
);

CREATE INDEX ix_credential_expiry ON credential (policy_id, secret_changed_at, id);

CREATE INDEX ix_credential_parent_id ON credential (parent_id);

CREATE INDEX ix_credential_device_id ON credential (device_id);

CREATE INDEX ix_credential_verify ON credential (policy_id, verified_at, id);

CREATE TABLE credentialsession (
	credential_id VARCHAR NOT NULL, 
	session_id VARCHAR NOT NULL, 
	started_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	PRIMARY KEY (credential_id, session_id), 
	FOREIGN KEY(credential_id) REFERENCES credential (id)
);

CREATE TABLE secretversion (
	id VARCHAR NOT NULL, 
	credential_id VARCHAR NOT NULL, 
	state VARCHAR(8) NOT NULL, 
	key_id VARCHAR NOT NULL, 
	ciphertext BLOB NOT NULL, 
	operation_id VARCHAR, 
	created_at DATETIME NOT NULL, 
	changed_at DATETIME NOT NULL, 
	last_login_ok_at DATETIME, 
	last_login_ok_operation_id VARCHAR, 
	PRIMARY KEY (id), 
	FOREIGN KEY(credential_id) REFERENCES credential (id)
);

CREATE INDEX ix_secretversion_operation_id ON secretversion (operation_id);

CREATE INDEX ix_secretversion_credential_id ON secretversion (credential_id);

CREATE TABLE operation (
	id VARCHAR NOT NULL, 
	credential_id VARCHAR NOT NULL, 
	kind VARCHAR NOT NULL, 
	"trigger" VARCHAR NOT NULL, 
	status VARCHAR(9) NOT NULL, 
	workflow_id VARCHAR NOT NULL, 
	pending_version_id VARCHAR, 
	parent_operation_id VARCHAR, 
	resolution VARCHAR, 
	error VARCHAR, 
	error_type VARCHAR, 
	created_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	run_id VARCHAR, 
	gate_seq INTEGER NOT NULL, 
	gate_state VARCHAR, 
	waiting_for VARCHAR, 
	base_version_id VARCHAR, 
	source_version_id VARCHAR, 
	requested_by VARCHAR, 
	callback_url VARCHAR, 
	PRIMARY KEY (id), 
	FOREIGN KEY(credential_id) REFERENCES credential (id)
);

CREATE INDEX ix_operation_parent_operation_id ON operation (parent_operation_id);

CREATE INDEX ix_operation_credential_id ON operation (credential_id);

CREATE INDEX ix_operation_workflow_id ON operation (workflow_id);

CREATE TABLE attempt (
	id VARCHAR NOT NULL, 
	operation_id VARCHAR NOT NULL, 
	step VARCHAR NOT NULL, 
	number INTEGER NOT NULL, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	outcome VARCHAR NOT NULL, 
	detail VARCHAR, 
	transcript TEXT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(operation_id) REFERENCES operation (id)
);

CREATE INDEX ix_attempt_operation_id ON attempt (operation_id);
