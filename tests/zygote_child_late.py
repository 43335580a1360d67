""":mod:`zygote_child` under a second module name, so a fork server started for
``["zygote_child", "zygote_child_late"]`` routes it to its delegate zygote."""

from zygote_child import main

if __name__ == "__main__":
    main()
