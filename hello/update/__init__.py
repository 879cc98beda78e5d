"""The update protocol: the step machine, the release under test, the deploy modes, the watch and the history."""
