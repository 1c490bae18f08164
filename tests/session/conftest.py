from .playbook import playbook  # noqa: F401 - registers the playbook fixture
