"""A local Neo4j 5.26 Community + Open GDS 2.13 server, built from Maven Central jars, run in the background.

`config` says where things live and which versions; `java` finds a usable JVM; `install` resolves the jars;
`server` writes an instance's configuration and starts, stops and inspects it.
"""
