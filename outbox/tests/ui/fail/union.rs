use outbox::Event;

#[derive(Event)]
#[event(topic = "bits")]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
