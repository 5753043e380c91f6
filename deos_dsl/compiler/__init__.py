"""deos_dsl.compiler: tracing frontend and block map."""
