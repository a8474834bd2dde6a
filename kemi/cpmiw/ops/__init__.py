"""The `cpmiw` tool of operations staff: profiles, bulk provisioning, explaining a decision."""
