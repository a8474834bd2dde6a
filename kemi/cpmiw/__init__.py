"""cpmiw: CPM / OMA SIMPLE IM / SMS interworking for a Kamailio terminating proxy."""
