package nixfmt

import "testing"

func TestCheckContentAddress(t *testing.T) {
	good := []string{
		"fixed:r:sha256:1lgr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4",
		"fixed:sha256:1lgr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4",
		"text:sha256:1lgr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4",
		"fixed:sha1:a9993e364706816aba3e25717850c26c9cd0d89d",
		"fixed:r:sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"fixed:md5:kAFQmDzST7DWlj99KOF/cg==",
	}
	for _, ca := range good {
		if err := CheckContentAddress(ca); err != nil {
			t.Errorf("%s: %v", ca, err)
		}
	}
	bad := []string{
		"garbage",
		"",
		"fixed:",
		"fixed:r:",
		"fixed:r:sha256",
		"fixed:r:sha256:",
		"fixed:r:sha256:tooshort",
		"fixed:r:blake7:1lgr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4",
		"text:sha1:a9993e364706816aba3e25717850c26c9cd0d89d",
		"other:sha256:1lgr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4",
		"fixed:git:sha1:a9993e364706816aba3e25717850c26c9cd0d89d",
		"fixed:r:sha256:sha256:1lgr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4",
		"fixed:r:sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015az",
		"fixed:r:sha256:ungr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4",
	}
	for _, ca := range bad {
		if err := CheckContentAddress(ca); err == nil {
			t.Errorf("%q was accepted", ca)
		}
	}
}
