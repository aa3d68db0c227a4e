import sys

from kernels.cpu_native import main

sys.exit(main())
