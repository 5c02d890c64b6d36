"""Code generation: loop IR -> LLVM IR (render), LLVM IR -> object, shared
library (compiler)."""
