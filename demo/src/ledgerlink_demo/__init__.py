"""The demo company of `make demo`: a generated Sage 50 company pushed to a running service
through the exporter's own code. Development only: the exporter's wheel and zipapp, which go
to the Sage PC, carry none of it; installed (make install), it adds the exporter's `demo`
command."""
