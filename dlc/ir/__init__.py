"""dlc's intermediate representations: the graph IR and the loop IR."""
