"""What runs inside `meshcp serve`: the store of mesh states, reconciling them into proxy-class
snapshots, publishing those with their secrets, trust upkeep, and the controller that wires
these to the xDS and HTTP servers for one lifetime."""
